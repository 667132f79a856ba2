"""Which Hugging Face architectures llmc reads, decided from ``config.json`` alone.

This module imports nothing heavy (no torch, no transformers: importing them takes seconds), so
the CLI refuses an unsupported architecture, or a variant of a supported one that llmc cannot
compile, in well under a second (:func:`precheck_dir`, called before any command loads a
model). The full checks (:mod:`llmc.frontends.hf_config`) run later, on models that pass.

:data:`SUPPORTED` mirrors :data:`llmc.frontends.families.FAMILIES` (architecture -> model_type;
a test keeps the two equal). :func:`refusal` names what a config asks for that llmc lacks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llmc.errors import ModelLoadError

#: architecture -> its ``model_type`` (the frontend families, llmc.frontends.families).
SUPPORTED: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "OPTForCausalLM": "opt",
    "GPT2LMHeadModel": "gpt2",
    "GPTNeoXForCausalLM": "gpt_neox",
    "Phi3ForCausalLM": "phi3",
    "FalconForCausalLM": "falcon",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3_text",
    "MixtralForCausalLM": "mixtral",
    "Qwen2MoeForCausalLM": "qwen2_moe",
}

#: Well-known architectures llmc does not read, and why (said in the refusal).
WHY_NOT: dict[str, str] = {
    "Qwen3MoeForCausalLM": "q/k-normed attention with mixture-of-experts layers (not added yet)",
    "DeepseekV3ForCausalLM": "mixture-of-experts layers and latent attention",
    "Gemma3ForConditionalGeneration": (
        "the multimodal Gemma 3 (a vision tower); its text-only checkpoints "
        "(Gemma3ForCausalLM, e.g. gemma-3-1b) are supported"
    ),
    "BloomForCausalLM": "ALiBi position biases",
    "MptForCausalLM": "ALiBi position biases",
    "MambaForCausalLM": "a state-space model, not attention",
    "FalconMambaForCausalLM": "a state-space model, not attention",
    "RwkvForCausalLM": "a recurrent model, not attention",
    "T5ForConditionalGeneration": "an encoder-decoder model",
    "BertForMaskedLM": "an encoder, not a causal LM",
}

_ROPE_TYPES = ("default", "linear", "llama3")
_LAYER_TYPES = ("full_attention", "sliding_attention")
_MAX_CONFIG_BYTES = 4 << 20


def _rope_dicts(cfg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(json path, dict) of every rope parameter set (Gemma 3 has one per layer type)."""
    out = []
    for key in ("rope_scaling", "rope_parameters"):
        rp = cfg.get(key)
        if not isinstance(rp, dict):
            continue
        nested = [(f"{key}.{k}", v) for k, v in rp.items() if k in _LAYER_TYPES]
        out.extend((k, v) for k, v in nested if isinstance(v, dict))
        if not nested:
            out.append((key, rp))
    return out


def refusal(cfg: dict[str, Any], where: str) -> str | None:
    """Why llmc cannot compile this config (one line naming ``where``), or None when it may."""
    archs = cfg.get("architectures")
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        return None  # malformed: hf_config reports it precisely
    arch = next((a for a in archs if a in SUPPORTED), None)
    if arch is None:
        shown = archs[0] if len(archs[0]) <= 100 else archs[0][:97] + "..."
        why = WHY_NOT.get(archs[0])
        why = f": {why}" if why else ""
        return (
            f"{where}: architecture {shown} is not supported{why} "
            f"(supported: {', '.join(sorted(SUPPORTED))})"
        )
    for key, rp in _rope_dicts(cfg):
        field = "rope_type" if "rope_type" in rp else "type"
        rtype = rp.get(field)
        if isinstance(rtype, str) and rtype not in _ROPE_TYPES:
            return (
                f"{where}: {key}.{field} is {rtype!r}: {arch} with this rope_type is not "
                f"supported (llmc's rope op implements {', '.join(_ROPE_TYPES)})"
            )
    if arch == "FalconForCausalLM" and cfg.get("alibi"):
        return f"{where}: {arch} with alibi: true (ALiBi position biases) is not supported"
    if arch == "Gemma3ForCausalLM" and cfg.get("use_bidirectional_attention"):
        return (
            f"{where}: {arch} with use_bidirectional_attention: true is not supported (llmc's "
            "attention is causal)"
        )
    return None


def precheck_dir(path: str | os.PathLike[str]) -> None:
    """Raise :class:`~llmc.errors.ModelLoadError` when the model directory's ``config.json``
    asks for something llmc cannot compile; anything else (no config, a malformed one, a
    compiled artifact) is left to the full loader, which reports it precisely."""
    d = Path(path)
    cfg_path = d / "config.json"
    try:
        if not cfg_path.is_file() or (d / "manifest.json").is_file():
            return
        if cfg_path.stat().st_size > _MAX_CONFIG_BYTES:
            return
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return
    if isinstance(cfg, dict):
        why = refusal(cfg, str(cfg_path))
        if why:
            raise ModelLoadError(why)
