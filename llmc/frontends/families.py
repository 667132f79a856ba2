"""The supported Hugging Face families and the substitutions that canonicalize them for tracing.

Each :class:`Family` names its architectures, its modeling module and where its decoder layers
live. :func:`canonical_pieces` is a context manager that, for the duration of an export, swaps a
model's pieces for the ``llmc::`` custom ops (:mod:`llmc.frontends.customops`):

- attention: ``config._attn_implementation = "llmc"``, a function registered with transformers'
  ``AttentionInterface``. Mask building is skipped by transformers for unknown implementations, so
  no mask arithmetic is traced at all; the causal mask and the sliding window become attributes.
- RMSNorm modules (``LlamaRMSNorm``, ...) -> ``llmc::rms_norm``.
- rotary embedding: the family's rotary module returns the integer positions in place of
  ``(cos, sin)``, and the modeling module's ``apply_rotary_pos_emb`` becomes ``llmc::rope`` on
  them, with theta / partial rotary / scaling read from the config (and cross-checked against the
  module's ``inv_freq``).
- tanh-approximated GELUs written as Python arithmetic (``gelu_new``) -> ``F.gelu(tanh)``.
- family-specific modules (Falcon's attention and linears, Gemma's scaled embeddings and final
  soft-cap, sparse MoE blocks) -> the forwards of :mod:`llmc.frontends.family_pieces`.

Everything is restored on exit; the model is unchanged afterwards.

Adding a family: add a :class:`Family` to :data:`FAMILIES` (see docs/frontend.md).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from llmc.errors import UnsupportedOpError
from llmc.frontends import customops
from llmc.frontends import family_pieces as pieces
from llmc.ir.ops import RopeAttrs, rope_inv_freq


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]
    model_type: str
    modeling: str  # module holding apply_rotary_pos_emb and the model classes
    layers: str  # module path of the decoder layer list
    rms_norm_classes: tuple[str, ...] = ()
    rotary: bool = False
    norm: str = "rms"
    # Checkpoint-name prefixes renamed on load (legacy names transformers still writes).
    renames: tuple[tuple[str, str], ...] = ()
    # RMSNorms that scale by ``1 + weight`` (Gemma) rather than ``weight``.
    rms_offset: bool = False
    # Attention modules whose forward is replaced as a whole (families that do not call
    # transformers' attention interface): class name -> forward factory in family_pieces.
    attention_forwards: tuple[tuple[str, str], ...] = ()
    # Sparse MoE blocks whose forward becomes llmc::moe (+ a shared expert where they have one).
    moe_blocks: tuple[str, ...] = ()


_T = "transformers.models"
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "llama",
            ("LlamaForCausalLM",),
            "llama",
            f"{_T}.llama.modeling_llama",
            "model.layers",
            ("LlamaRMSNorm",),
            rotary=True,
        ),
        Family(
            "mistral",
            ("MistralForCausalLM",),
            "mistral",
            f"{_T}.mistral.modeling_mistral",
            "model.layers",
            ("MistralRMSNorm",),
            rotary=True,
        ),
        Family(
            "qwen2",
            ("Qwen2ForCausalLM",),
            "qwen2",
            f"{_T}.qwen2.modeling_qwen2",
            "model.layers",
            ("Qwen2RMSNorm",),
            rotary=True,
        ),
        Family(
            "opt",
            ("OPTForCausalLM",),
            "opt",
            f"{_T}.opt.modeling_opt",
            "model.decoder.layers",
            norm="layer",
        ),  # fmt: skip
        Family(
            "gpt2",
            ("GPT2LMHeadModel",),
            "gpt2",
            f"{_T}.gpt2.modeling_gpt2",
            "transformer.h",
            norm="layer",
        ),  # fmt: skip
        Family(
            "gpt_neox",
            ("GPTNeoXForCausalLM",),
            "gpt_neox",
            f"{_T}.gpt_neox.modeling_gpt_neox",
            "gpt_neox.layers",
            rotary=True,
            norm="layer",
            renames=(("embed_out.", "lm_head."),),
        ),
        # fused qkv_proj and gate_up_proj (sliced in the traced graph), a sliding window
        Family(
            "phi3",
            ("Phi3ForCausalLM",),
            "phi3",
            f"{_T}.phi3.modeling_phi3",
            "model.layers",
            ("Phi3RMSNorm",),
            rotary=True,
        ),
        # parallel attention + MLP, multi-query (or grouped, new_decoder_architecture) attention
        # from one fused query_key_value; no attention interface: the attention is replaced
        Family(
            "falcon",
            ("FalconForCausalLM",),
            "falcon",
            f"{_T}.falcon.modeling_falcon",
            "transformer.h",
            rotary=True,
            norm="layer",
            attention_forwards=(("FalconAttention", "falcon_attention"),),
        ),
        # logit soft-capping (attention and final), alternating sliding/full layers, scaled
        # embeddings, (1 + w) RMSNorms, four norms per layer
        Family(
            "gemma2",
            ("Gemma2ForCausalLM",),
            "gemma2",
            f"{_T}.gemma2.modeling_gemma2",
            "model.layers",
            ("Gemma2RMSNorm",),
            rotary=True,
            rms_offset=True,
        ),
        # Gemma 2 plus q/k norms and a rope base per layer type (local / global)
        Family(
            "gemma3",
            ("Gemma3ForCausalLM",),
            "gemma3_text",
            f"{_T}.gemma3.modeling_gemma3",
            "model.layers",
            ("Gemma3RMSNorm",),
            rotary=True,
            rms_offset=True,
        ),
        # routed experts (llmc::moe) in place of the data-dependent expert loop
        Family(
            "mixtral",
            ("MixtralForCausalLM",),
            "mixtral",
            f"{_T}.mixtral.modeling_mixtral",
            "model.layers",
            ("MixtralRMSNorm",),
            rotary=True,
            moe_blocks=("MixtralSparseMoeBlock",),
        ),
        # routed experts plus a sigmoid-gated shared expert
        Family(
            "qwen2_moe",
            ("Qwen2MoeForCausalLM",),
            "qwen2_moe",
            f"{_T}.qwen2_moe.modeling_qwen2_moe",
            "model.layers",
            ("Qwen2MoeRMSNorm",),
            rotary=True,
            moe_blocks=("Qwen2MoeSparseMoeBlock",),
        ),
    )
}
ARCHITECTURES: dict[str, Family] = {a: f for f in FAMILIES.values() for a in f.architectures}


def supported_architectures() -> list[str]:
    return sorted(ARCHITECTURES)


def family_of(model: torch.nn.Module) -> Family:
    """The family of a Hugging Face causal LM (by class name, then ``config.model_type``)."""
    cls = type(model).__name__
    if cls in ARCHITECTURES:
        return ARCHITECTURES[cls]
    raise UnsupportedOpError(
        f"{cls} ({getattr(getattr(model, 'config', None), 'model_type', '?')}) is not a supported "
        f"architecture; supported: {', '.join(supported_architectures())}"
    )


# ----------------------------------------------------------------------------------------------
# config-derived facts


# Families whose transformers modeling reads ``config.head_dim``; the others compute
# hidden_size // num_attention_heads and ignore a stray ``head_dim`` key, and so must llmc.
_EXPLICIT_HEAD_DIM = (
    "llama",
    "mistral",
    "qwen2",
    "phi3",
    "gemma2",
    "gemma3_text",
    "mixtral",
    "qwen2_moe",
)
LAYER_TYPES = ("full_attention", "sliding_attention")


def head_dim(config: Any) -> int:
    hd = getattr(config, "head_dim", None)
    if getattr(config, "model_type", None) not in _EXPLICIT_HEAD_DIM:
        hd = None
    return int(hd) if hd else config.hidden_size // config.num_attention_heads


SUPPORTED_ROPE = {"default": "", "linear": "linear", "llama3": "llama3"}


def rope_parameters(config: Any, layer_type: str | None = None) -> dict[str, Any]:
    """The config's rope parameters for a layer type (Gemma 3 keys them by layer type: a local
    and a global base; the others have one set, and ``layer_type`` is ignored)."""
    rp = dict(getattr(config, "rope_parameters", None) or {})
    if rp and set(rp) <= set(LAYER_TYPES):
        return dict(rp.get(layer_type or "full_attention") or rp.get("full_attention") or {})
    return rp


def rope_attrs(config: Any, layer_type: str | None = None) -> RopeAttrs:
    """The IR rope attributes of a config (``rope_parameters`` as transformers standardizes it)."""
    rp = rope_parameters(config, layer_type)
    rtype = rp.get("rope_type", rp.get("type", "default"))
    if rtype not in SUPPORTED_ROPE:
        raise UnsupportedOpError(
            f"rope_type {rtype!r} is not supported (supported: {', '.join(SUPPORTED_ROPE)}); "
            "llmc's rope op implements default, linear and llama3 scaling"
        )
    hd = head_dim(config)
    partial = float(rp.get("partial_rotary_factor", 1.0) or 1.0)
    rd = int(hd * partial)
    if rd < 2 or rd % 2:
        raise UnsupportedOpError(
            f"rotary dimensions {rd} (head_dim {hd} x partial_rotary_factor {partial}) must be a "
            "positive even number"
        )
    return RopeAttrs(
        theta=float(rp.get("rope_theta", 10000.0)),
        rotary_dim=0 if rd == hd else rd,
        scaling=SUPPORTED_ROPE[rtype],
        factor=float(rp.get("factor", 1.0)),
        low_freq_factor=float(rp.get("low_freq_factor", 1.0)),
        high_freq_factor=float(rp.get("high_freq_factor", 4.0)),
        original_max_position=int(rp.get("original_max_position_embeddings", 8192)),
    )


def _inv_freq(module: torch.nn.Module, attr: str = "inv_freq") -> torch.Tensor | None:
    """The rotary module's ``inv_freq`` (``attr``); for a module built on ``meta`` (a model
    directory, the zoo) a CPU twin is built from its config, so the cross-check below runs for
    those too."""
    inv = getattr(module, attr, None)
    if inv is None or inv.device.type != "meta":
        return inv
    cfg = getattr(module, "config", None)
    if cfg is None:
        return None
    try:
        with torch.device("cpu"):
            return getattr(type(module)(cfg), attr)
    except Exception:  # a rotary class with another constructor: no twin, no cross-check
        return None


def _check_rope(module: torch.nn.Module, config: Any, hd: int) -> None:
    """The rotary module's frequencies (per layer type where it keeps one set per type, as
    Gemma 3 does) against llmc's rope for the config."""
    types = getattr(module, "layer_types", None)
    kinds = [(lt, f"{lt}_inv_freq", f"{lt}_attention_scaling") for lt in types] if isinstance(
        types, (list, tuple)) else [(None, "inv_freq", "attention_scaling")]  # fmt: skip
    for lt, inv_attr, scaling_attr in kinds:
        attrs = rope_attrs(config, lt)
        scaling = float(getattr(module, scaling_attr, 1.0) or 1.0)
        if scaling != 1.0:
            raise UnsupportedOpError(f"rotary attention_scaling {scaling} is not supported")
        inv = _inv_freq(module, inv_attr)
        if inv is None:
            continue
        mine = rope_inv_freq(attrs, attrs.rotary_dim or hd)
        if mine.shape != inv.shape or not torch.allclose(mine, inv.float().cpu(), rtol=1e-5):
            raise UnsupportedOpError(
                f"{type(module).__name__}: its inv_freq does not match llmc's rope for {attrs} "
                "(an unsupported rotary variant)"
            )


# ----------------------------------------------------------------------------------------------
# the llmc attention implementation


def _llmc_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    s_aux: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    where = type(module).__name__
    if attention_mask is not None:
        raise UnsupportedOpError(
            f"{where}: an explicit attention mask (padding) is not supported; llmc's attention is "
            "causal over the whole sequence"
        )
    if s_aux is not None:
        raise UnsupportedOpError(f"{where}: attention sinks are not supported")
    causal = bool(getattr(module, "is_causal", True))
    out = torch.ops.llmc.attention(
        query,
        key,
        value,
        float(scaling or 0.0),
        causal,
        int(sliding_window or 0),
        float(softcap or 0.0),
    )
    return out.transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register("llmc", _llmc_attention)


_register_attention()


# ----------------------------------------------------------------------------------------------
# the substitutions


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _gelu_erf(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)


_ACTIVATIONS = {
    "NewGELUActivation": _gelu_tanh,
    "FastGELUActivation": _gelu_tanh,
    "GELUTanh": _gelu_tanh,
    "PytorchGELUTanh": _gelu_tanh,
    "GELUActivation": _gelu_erf,
}


def _rms_forward(mod: torch.nn.Module, offset: bool = False) -> Any:
    eps = getattr(mod, "variance_epsilon", None)
    if eps is None:
        eps = getattr(mod, "eps", 1e-6)
    eps = float(eps)

    def forward(x: torch.Tensor) -> torch.Tensor:
        # Gemma scales by (1 + w), in float32 before rounding (llmc's rms_norm does the same)
        w = 1.0 + mod.weight.float() if offset else mod.weight
        return torch.ops.llmc.rms_norm(x, w, eps)

    return forward


def _positions_forward(x: torch.Tensor, position_ids: torch.Tensor | None = None, *a: Any,
                       **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    if position_ids is None:
        raise UnsupportedOpError("the rotary embedding was called without position_ids")
    return position_ids, position_ids


def _rope_function(current: dict[str, RopeAttrs]) -> Any:
    """``apply_rotary_pos_emb`` as ``llmc::rope`` with ``current["attrs"]`` (set per attention
    module by a pre-forward hook where the rope differs by layer type)."""

    def apply_rotary_pos_emb(q: Any, k: Any, cos: Any, sin: Any, *a: Any, **kw: Any) -> Any:
        if cos.dtype not in (torch.int64, torch.int32):
            raise UnsupportedOpError(
                "apply_rotary_pos_emb received cos/sin tables, not positions: the rotary module "
                "of this model was not substituted (internal frontend error)"
            )
        text = customops.rope_attrs_json(current["attrs"])
        return torch.ops.llmc.rope(q, cos, text), torch.ops.llmc.rope(k, cos, text)

    return apply_rotary_pos_emb


@contextlib.contextmanager
def canonical_pieces(model: torch.nn.Module, fam: Family) -> Iterator[RopeAttrs | None]:
    """Substitute the model's pieces with ``llmc::`` ops while the context is active."""
    from transformers import PreTrainedConfig

    undo: list[Any] = []
    attrs = rope_attrs(model.config) if fam.rotary else None
    try:
        configs = {id(m.config): m.config for m in model.modules() if isinstance(
            getattr(m, "config", None), PreTrainedConfig)}  # fmt: skip
        for cfg in configs.values():
            old = cfg._attn_implementation
            cfg._attn_implementation = "llmc"
            undo.append(lambda cfg=cfg, old=old: setattr(cfg, "_attn_implementation", old))
        hd = head_dim(model.config)
        current: dict[str, Any] = {"attrs": attrs}
        attention_forwards = dict(fam.attention_forwards)
        for mod in model.modules():
            cls = type(mod).__name__
            new = None
            if cls in fam.rms_norm_classes:
                new = _rms_forward(mod, fam.rms_offset)
            elif fam.rotary and cls.endswith("RotaryEmbedding"):
                _check_rope(mod, model.config, hd)
                new = _positions_forward
            elif cls in _ACTIVATIONS and not getattr(mod, "_llmc_keep", False):
                new = _ACTIVATIONS[cls]
            elif cls in pieces.LINEARS:
                new = pieces.linear_forward(mod)
            elif cls.endswith("ScaledWordEmbedding") and hasattr(mod, "scalar_embed_scale"):
                new = pieces.scaled_embedding_forward(mod)
            elif cls in fam.moe_blocks:
                new = pieces.moe_forward(mod)
            elif cls in attention_forwards:
                new = getattr(pieces, attention_forwards[cls])(mod)
            if fam.rotary and isinstance(getattr(mod, "layer_type", None), str):
                # the rope of this attention module's layer type (Gemma 3: local / global base)
                la = rope_attrs(model.config, mod.layer_type)
                hook = mod.register_forward_pre_hook(
                    lambda m, args, la=la: current.__setitem__("attrs", la)
                )
                undo.append(hook.remove)
            if new is not None:
                had = "forward" in mod.__dict__
                old_fwd = mod.__dict__.get("forward")
                mod.forward = new
                undo.append(
                    lambda mod=mod, had=had, old_fwd=old_fwd: (
                        setattr(mod, "forward", old_fwd) if had else mod.__dict__.pop("forward")
                    )
                )
        cap = getattr(model.config, "final_logit_softcapping", None)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if cap and head is not None:
            # Gemma 2's final soft-cap, moved into the head's scope (block ``head``): the logits
            # are still the head's output for the passes that look for it.
            model.config.final_logit_softcapping = None
            undo.append(lambda: setattr(model.config, "final_logit_softcapping", cap))
            head.forward = pieces.capped_head_forward(head, float(cap))
            undo.append(lambda: head.__dict__.pop("forward"))
        if fam.rotary:
            assert attrs is not None
            modeling = importlib.import_module(fam.modeling)
            old_fn = modeling.apply_rotary_pos_emb
            modeling.apply_rotary_pos_emb = _rope_function(current)
            undo.append(lambda: setattr(modeling, "apply_rotary_pos_emb", old_fn))
        yield attrs
    finally:
        for fn in reversed(undo):
            fn()


def model_meta(model: torch.nn.Module, fam: Family) -> dict[str, Any]:
    """``graph.meta`` facts of the LM ABI (``llmc-lm-v1``) read from the config."""
    c = model.config
    heads = int(c.num_attention_heads)
    hidden = int(c.hidden_size)
    # Each family's own field (a stray key of another family's spelling is ignored, as
    # transformers ignores it).
    gqa = getattr(c, "model_type", None) in _EXPLICIT_HEAD_DIM
    inter = {
        "opt": lambda: getattr(c, "ffn_dim", None),
        "gpt2": lambda: getattr(c, "n_inner", None) or 4 * hidden,
        "falcon": lambda: getattr(c, "ffn_hidden_size", None) or 4 * hidden,
        "qwen2_moe": lambda: getattr(c, "moe_intermediate_size", None),
    }.get(fam.name, lambda: getattr(c, "intermediate_size", None))()
    meta: dict[str, Any] = {
        "abi": "llmc-lm-v1",
        "family": fam.name,
        "architecture": type(model).__name__,
        "num_layers": int(c.num_hidden_layers),
        "num_heads": heads,
        "num_kv_heads": int((getattr(c, "num_key_value_heads", None) if gqa else None) or heads),
        "head_dim": head_dim(c),
        "hidden_size": hidden,
        "intermediate_size": int(inter),
        "vocab_size": int(c.vocab_size),
        "max_position_embeddings": int(c.max_position_embeddings),
        "layer_prefix": fam.layers,
        "norm": fam.norm,
        # a learned position table bounds the positions a compiled model may be asked for
        "position_embedding": "rope" if fam.rotary else "learned",
    }
    if fam.rotary:
        a = rope_attrs(c)
        meta["rope"] = {
            "theta": a.theta,
            "rotary_dim": a.rotary_dim or head_dim(c),
            "scaling": a.scaling or "none",
        }
        if a.scaling:
            meta["rope"].update(
                factor=a.factor,
                low_freq_factor=a.low_freq_factor,
                high_freq_factor=a.high_freq_factor,
                original_max_position=a.original_max_position,
            )
    sw = getattr(c, "sliding_window", None)
    windowed = fam.name in ("mistral", "phi3", "gemma2", "gemma3")
    if sw and (windowed or getattr(c, "use_sliding_window", False)):
        meta["sliding_window"] = int(sw)
    lt = getattr(c, "layer_types", None)
    if fam.name in ("gemma2", "gemma3") and lt:
        meta["layer_types"] = [str(t) for t in lt]
    if fam.name == "gemma3" and isinstance(lt, (list, tuple)) and "sliding_attention" in lt:
        a = rope_attrs(c, "sliding_attention")
        meta["rope_local"] = {"theta": a.theta, "scaling": a.scaling or "none"}
    if fam.moe_blocks:
        meta["num_experts"] = int(getattr(c, "num_local_experts", None) or c.num_experts)
        meta["experts_per_token"] = int(c.num_experts_per_tok)
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(c, key, None):
            meta[key] = float(getattr(c, key))
    act = getattr(c, "hidden_act", None) or getattr(c, "activation_function", None)
    if act:
        meta["activation"] = str(act)
    if fam.name == "gpt2" and getattr(c, "scale_attn_by_inverse_layer_idx", False):
        meta["scale_attn_by_inverse_layer_idx"] = True
    return meta
